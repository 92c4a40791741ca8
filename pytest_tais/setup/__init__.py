"""Setup: the options (declared once), the frozen run config, the engine settings and the matrix of settings."""
