"""The shared MLOps core: everything that is the same for every service lives here once."""
