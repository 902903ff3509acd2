"""`panel eval`: run policies through the real fleet on replayed model outputs, and compare them
with reference policies computed on the same rows (each single model, the strongest single
model, and a Fusion-style panel that always runs every member plus the judge)."""
