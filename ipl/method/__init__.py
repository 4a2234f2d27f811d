"""The method (IPL and the NADA baseline): CLIP, prompts, losses, layer freezing, stage 1 and stage 2.

Imports no generator family: generators plug in through ipl.core.interface.AdaptableGenerator.
"""
