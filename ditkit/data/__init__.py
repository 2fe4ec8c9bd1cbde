"""Data: image datasets (MNIST, sklearn digits, image folders) and video datasets (Moving MNIST, video folders). It
imports only :mod:`ditkit.core`."""
