"""Person identification: does generated data help a classifier name the person in a spectrogram?"""
