"""Model zoo. Importing this package registers every model below with timm.

Teachers: cifar10_resnet20, cifar10_resnet56, cifar100_resnet56, cifar10_densenet_bc100,
cifar100_densenet_bc100 (weights in shared/teachers), cifar10_airbench (trained here:
tools/train_airbench.py). Students: cifar_vit, cct_7_3x1,
cifar_cnn, and timm's tiny_vit_{5m,11m,21m}.
"""
from . import airbench, cifar_teachers, seed_rows, students  # noqa: F401  (registers the models with timm)
from .students import create_student
from .teachers import FlipAveraged, Preprocessed, TeacherEnsemble, create_teacher, create_teachers
from .weights import load_adapted, load_weights, read_state_dict

__all__ = ["FlipAveraged", "Preprocessed", "TeacherEnsemble", "create_student", "create_teacher", "create_teachers", "load_adapted",
           "load_weights", "read_state_dict"]
