"""genloom.tokenizers"""
