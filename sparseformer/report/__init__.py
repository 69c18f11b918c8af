"""sparseformer.report"""
