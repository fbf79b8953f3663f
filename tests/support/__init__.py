"""What tests share: paths and real-dependency helpers (helpers), trained services and live API
processes (live), fast-path parity (parity), property-based fuzzing (fuzz) and a small synthetic
service (synthetic)."""
