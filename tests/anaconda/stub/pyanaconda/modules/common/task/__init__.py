"""Task: Anaconda runs a task's run() in a thread and reports what it raises."""
from abc import ABC, abstractmethod


class Task(ABC):
    @property
    @abstractmethod
    def name(self):
        pass

    @abstractmethod
    def run(self):
        pass
