"""mtt_fast.models"""
