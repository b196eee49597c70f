"""Device side of LeukoScreen: everything the Raspberry Pi or Jetson runs.

Nothing in this package imports tensorflow, keras or scikit-learn (a test checks it).
"""
