"""Longitudinal follow-up over N time points: priors registered to the current study, lesions tracked
with persistent tracking identifiers, RECIST 1.1 response against baseline and nadir."""
