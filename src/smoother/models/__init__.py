"""Models of the classic API: deconvolution, imputation and dimension reduction."""
