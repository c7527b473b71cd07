"""How good the generated spectrograms are: feature-space distances, usefulness, identifiability, memorisation."""
