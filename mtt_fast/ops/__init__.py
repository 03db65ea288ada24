"""mtt_fast.ops"""
