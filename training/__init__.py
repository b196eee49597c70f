"""Desktop side: data sets, leak-free splits, models, training, evaluation and reports."""
