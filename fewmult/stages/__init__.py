"""A run that builds on other runs: started from one's best weights (``init_from``), taught by one's
network (``teacher``), or trained in two stages (``two_stage``), as the ResNet papers' recipes do."""
