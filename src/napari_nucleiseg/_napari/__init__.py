"""The napari face of the plugin: reader, sample data and dock widgets (thin, over the core)."""
