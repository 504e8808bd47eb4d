"""genloom.decode"""
