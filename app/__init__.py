"""The Streamlit app: entry point Home.py, shared state and widgets (views are in pages/)."""
