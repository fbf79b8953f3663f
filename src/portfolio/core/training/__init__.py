"""Training a service: the run itself (``train``: split, cross-validate, fit, threshold, log,
register, gate), its metrics and plots (``evaluation``), the fairness report (``fairness``), the
model card (``model_card``) and the learning curve (``learning_curve``)."""
