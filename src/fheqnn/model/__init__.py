"""The torch / brevitas side: the sparse quantized network and its scikit-learn estimators."""
