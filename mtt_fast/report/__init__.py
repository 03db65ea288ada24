"""mtt_fast.report"""
