"""Pure numpy math of the low-rank formats (no ONNX here): SVD, Tucker-2, CP, TT, rank selectors."""

from tensorfold.decompose.cp import CP, cp_als, cp_params, cp_reconstruct
from tensorfold.decompose.ranks import Option, allocate_budget, clip_rank, evbmf_rank, rank_for_energy
from tensorfold.decompose.svd import singular_values, truncated_svd
from tensorfold.decompose.tt import (
    factorize_dim,
    tt_contraction,
    tt_matrix,
    tt_matrix_contraction,
    tt_params,
    tt_ranks,
    tt_svd,
)
from tensorfold.decompose.tucker2 import (
    Tucker2,
    tucker2,
    tucker2_error_table,
    tucker2_params,
    tucker2_reconstruct,
)

__all__ = [
    "CP",
    "cp_als",
    "cp_params",
    "cp_reconstruct",
    "Option",
    "allocate_budget",
    "clip_rank",
    "evbmf_rank",
    "rank_for_energy",
    "singular_values",
    "truncated_svd",
    "factorize_dim",
    "tt_contraction",
    "tt_matrix",
    "tt_matrix_contraction",
    "tt_params",
    "tt_ranks",
    "tt_svd",
    "Tucker2",
    "tucker2",
    "tucker2_error_table",
    "tucker2_params",
    "tucker2_reconstruct",
]
