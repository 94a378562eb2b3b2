"""Generative models: PixelCNN, VAE and DCGAN trainers."""
