"""Pure analyses over store data, one module per analysis; they never import a model."""
