"""Low-rank factorization (truncated SVD) of Linear and Conv layers."""

from autocompress.factorize.svd import FactorizeConfig, break_even_rank, factorize_, plan_ranks

__all__ = ["FactorizeConfig", "break_even_rank", "factorize_", "plan_ranks"]
