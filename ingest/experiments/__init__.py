"""Experiment arms over generation pairs: ``lifecycle`` (start, weight, promote, stop: aliases moved
under the re-index lock) and ``report`` (the readout: per arm, pages followed by an event, with
confidence intervals). Which user is in which arm is ``facetrec.experiments``."""
