"""sparseformer.tasks"""
