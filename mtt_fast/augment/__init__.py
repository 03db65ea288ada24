"""mtt_fast.augment"""
