"""genloom.nn"""
