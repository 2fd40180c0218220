"""Optional pieces for projects that use visualsearch; none is imported by the app itself."""
