"""sparseformer.data"""
