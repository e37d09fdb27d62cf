"""Reference backend"""
