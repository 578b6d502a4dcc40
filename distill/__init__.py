"""tinyvit-distill's library: TinyViT-style fast distillation from a stored teacher.

The modules, by stage (each docstring says what it owns and why):

- Data and replay: `catalog` (dataset names, light), `datasets` (the labelled splits),
  `recipes` (one entry per augmentation recipe, and the one view-size rule), `augment` (a
  view is a function of image, seed and recipe), `view_draws` (a batch's view parameters from
  counters), `replay` (seeded views, and a store's views rebuilt for the student),
  `device_replay` (the same views by whole-batch ops on the device), `batch` (the one `Batch`
  every consumer gets, and the stored `SparseTarget` it may carry: below the data path and
  the loss, so the data never imports the loss).
- Teacher stage: `teacher_stage` (label E augmented passes once, into a store, as its
  `LabelJob` asks),
  `store_writing` (open, write and seal it), `store_teachers` (which teachers made a store,
  and the checks against them).
- Student stage: `student_stage` (the run, top to bottom), `student_data` (its views and test
  split), `loss` (kd, scratch and online targets), `engine` (DeepSpeed, checkpoints),
  `deepspeed_file` (a user's DeepSpeed JSON merged in), `run_folder` (whose folder it is),
  `run_log`, `tracking` (progress, W&B), `distributed` (process groups).
- Models: `models/` (students and teachers registered with timm, names checked against
  timm's registry, weights read safely, exports timm loads), `model_card`, `model_cost`; `airbench_recipe` trains the airbench teacher.
- Evaluation: `evaluation` (score any classifier on a test split), `metrics`, `report`,
  `attention`.
- Configuration: `config` (the schema), `config_tree` (the strict YAML -> dataclass loader),
  `input_rules` (each rule an input obeys, once, for flags and config keys alike), `cli` (the
  flags the programs share and their one-line errors).
- Programs: `programs/` (the console scripts; `tools/NAME.py` runs each from a checkout).

The one rule of the house: the store (`teacher_logits/`) never imports this library, and the
library never imports the programs, the benchmarks or the tests, nor sees argparse: programs
parse their flags into typed jobs and sit on top, and data flows downhill from the store through
replay and `batch` to the loss (tests/test_code_shape.py).
"""
