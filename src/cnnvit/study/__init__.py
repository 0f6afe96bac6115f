"""Studies: a grid of cells (models x training sizes x seeds x depths) trained into run folders,
then profiled, compared and analysed (``cnnvit compare``)."""
