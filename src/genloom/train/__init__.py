"""genloom.train"""
