"""Desktop side: conversion of trained models into TFLite and ONNX bundles for the device."""
