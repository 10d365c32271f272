"""Datasets, tokenizers and chat templates: a checkpoint's tokenizer as our `Tokenizer`
(tokenizer.py), dataset files read into checked rows (dataset.py), rows rendered into the run's
prompts (prompts.py)."""

from streamrl.data.dataset import DataError, Dataset, Message, Row, read_dataset
from streamrl.data.prompts import DatasetPrompts, PromptOptions, epoch_order
from streamrl.data.tokenizer import HFTokenizer, check_fits, load_tokenizer

__all__ = ["DataError", "Dataset", "DatasetPrompts", "HFTokenizer", "Message", "PromptOptions",
           "Row", "check_fits", "epoch_order", "load_tokenizer", "read_dataset"]
