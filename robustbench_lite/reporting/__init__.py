"""Reports built from the results store alone: leaderboards, the static site, plots and galleries.
They read stored cells and artifacts; nothing below them imports them."""
