"""TelecomAI Customer Intelligence: which telco customers are about to leave, how risky each one is,
and why (soft-voting ensemble with in-pipeline under-sampling)."""
