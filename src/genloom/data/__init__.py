"""genloom.data"""
