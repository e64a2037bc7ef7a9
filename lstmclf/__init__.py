"""lstmclf: train, tune, compare, store and retrain CNN-LSTM image classifiers on Ray."""
