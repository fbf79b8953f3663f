"""Plan Recommendation: which tariff (Ultra or Smart) fits a subscriber."""
