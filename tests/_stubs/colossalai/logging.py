import logging
def get_dist_logger(name: str = 'colossalai'): return logging.getLogger(name)
