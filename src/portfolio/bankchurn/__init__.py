"""BankChurn Predictor: will a bank customer leave? (binary classification, XGBoost)."""
