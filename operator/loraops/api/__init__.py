"""The loraops API: pydantic models of the three kinds, the single source of CRDs, defaults and docs.

This package imports no other part of loraops.
"""

from .adapter import LoraAdapterSpec, LoraAdapterStatus
from .common import API_VERSION, GROUP, VERSION, Condition
from .kinds import ADAPTER_ROUTE, KINDS, KINDS_BY_NAME, LORA_ADAPTER, LORA_TRAINING, Kind
from .route import AdapterRouteSpec, AdapterRouteStatus, RouteTable, RouteTraffic
from .training import LoraTrainingSpec, LoraTrainingStatus

__all__ = [
    "ADAPTER_ROUTE",
    "API_VERSION",
    "GROUP",
    "KINDS",
    "KINDS_BY_NAME",
    "LORA_ADAPTER",
    "LORA_TRAINING",
    "VERSION",
    "AdapterRouteSpec",
    "AdapterRouteStatus",
    "Condition",
    "Kind",
    "LoraAdapterSpec",
    "LoraAdapterStatus",
    "LoraTrainingSpec",
    "LoraTrainingStatus",
    "RouteTable",
    "RouteTraffic",
]
