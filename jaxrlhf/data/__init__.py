"""Preference data: load and clean local files (with a report), tokenise to fixed-shape
arrays with a documented truncation policy, and batch deterministically for exact resume."""

from jaxrlhf.data.preference import (SKIP_REASONS, CleanReport, DataError, RankedExample,
                                     load_preference_data)
from jaxrlhf.data.batching import (batches_per_epoch, epoch_order, iterate_batches, length_grouped_order,
                                   row_lengths, trim_padding)
from jaxrlhf.data.tokenize import RankedArrays, pad_id_of, split_train_eval, tokenize_ranked
from jaxrlhf.data.sft import SFT_SKIP_REASONS, SFTArrays, SFTExample, load_sft_data, pack_sft, tokenize_sft
from jaxrlhf.data.dpo import PAIR_MODES, PairArrays, ranked_to_pairs, tokenize_pairs

__all__ = ["SKIP_REASONS", "CleanReport", "DataError", "RankedArrays", "RankedExample",
           "batches_per_epoch", "epoch_order", "iterate_batches", "length_grouped_order", "row_lengths",
           "trim_padding", "load_preference_data",
           "pad_id_of", "split_train_eval", "tokenize_ranked",
           "SFT_SKIP_REASONS", "SFTArrays", "SFTExample", "load_sft_data", "pack_sft", "tokenize_sft",
           "PAIR_MODES", "PairArrays", "ranked_to_pairs", "tokenize_pairs"]
