"""The augmentation study: does generated data help identification, above all for withheld person x condition
pairs? Every knob is chosen on validation, every test row is a mean over seeds (run_augmentation_study.py)."""
