"""Images and datasets in: MVTec-layout checks, the one image loader, demo data."""
