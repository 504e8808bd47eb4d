"""genloom.tasks"""
