"""Small helpers shared by every part of the project, one per job. They import nothing else of the project,
so the networks in models/ may use them too."""
